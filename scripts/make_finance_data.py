#!/usr/bin/env python3
"""Generate the sample finance datasets shipped in data/.

Deterministic: uses only random.Random(seed) and the standard library (no network).
Writes data/finance_qa.jsonl (alpaca format), data/finance_sentiment.jsonl (text/label)
and data/finance_chat.jsonl (chat messages).

Concept questions and answers are hand-written literal data below. Calculation questions
are generated from templates with numbers drawn from the seeded RNG; answers are computed
in Python. All company names are fictional. Nothing here is financial advice.

Usage: python scripts/make_finance_data.py [--seed 1234] [--out-dir data]
"""

import argparse
import json
import math
import os
import random
from decimal import ROUND_HALF_UP, Decimal

DEFAULT_SEED = 1234

# Hand-written concept Q&A: (instruction, output). Written for this project.
CONCEPTS = [
    (
        "What is diversification in investing?",
        "Diversification is spreading money across many different investments, such as different companies, sectors, asset classes or regions, so that a loss in any single holding has a smaller effect on the whole portfolio. It reduces company-specific risk but cannot remove market-wide risk.",
    ),
    (
        "What is bond duration?",
        "Duration measures how sensitive a bond's price is to changes in interest rates. Macaulay duration is the weighted-average time, in years, until the bond's cash flows are received; the higher the duration, the more the price moves when rates change.",
    ),
    (
        "What is modified duration?",
        "Modified duration estimates the percentage change in a bond's price for a 1 percentage point change in yield. It equals Macaulay duration divided by (1 + yield per period); a modified duration of 6 means the price falls roughly 6% if yields rise by 1 percentage point.",
    ),
    (
        "What is a yield curve?",
        "A yield curve is a chart of the yields on bonds of the same credit quality, typically government bonds, plotted against their time to maturity. Normally it slopes upward because investors demand higher yields for lending over longer periods.",
    ),
    (
        "What does it mean when the yield curve inverts?",
        "An inverted yield curve means short-term bonds yield more than long-term bonds. It often reflects expectations that interest rates will fall in the future, and historically it has frequently preceded recessions, although it is not a guaranteed signal.",
    ),
    (
        "What is EBITDA?",
        "EBITDA stands for earnings before interest, taxes, depreciation and amortization. It approximates operating profitability before financing decisions, tax rules and non-cash charges, which makes it useful for comparing companies, but it ignores capital spending and is not a measure of cash flow.",
    ),
    (
        "What is working capital?",
        "Working capital is current assets minus current liabilities. It shows whether a business has enough short-term resources, such as cash, receivables and inventory, to cover obligations due within about a year.",
    ),
    (
        "What is the difference between liquidity and solvency?",
        "Liquidity is the ability to meet short-term obligations as they come due, using cash or assets that can quickly be turned into cash. Solvency is the ability to meet all obligations over the long run, meaning total assets exceed total liabilities and the business can sustain its debt.",
    ),
    (
        "What is a call option?",
        "A call option gives the buyer the right, but not the obligation, to buy an underlying asset at a set price (the strike price) on or before an expiration date. The buyer pays a premium for this right and benefits if the asset's price rises above the strike.",
    ),
    (
        "What is a put option?",
        "A put option gives the buyer the right, but not the obligation, to sell an underlying asset at the strike price on or before expiration. It gains value when the underlying price falls, so it is often used to protect against declines.",
    ),
    (
        "What is the strike price of an option?",
        "The strike price is the fixed price at which the holder of an option can buy (for a call) or sell (for a put) the underlying asset if the option is exercised.",
    ),
    (
        "What is an option premium?",
        "The option premium is the price the buyer pays the seller (writer) for an option contract. It reflects the option's intrinsic value, the time left until expiration, the underlying asset's volatility and interest rates.",
    ),
    (
        "How does an ETF differ from a mutual fund?",
        "An exchange-traded fund (ETF) trades on a stock exchange throughout the day at market prices, like a share. A traditional mutual fund is bought and sold directly with the fund company once a day at its net asset value calculated after the market closes. Both pool investors' money into a portfolio.",
    ),
    (
        "What is dollar-cost averaging?",
        "Dollar-cost averaging is investing a fixed amount of money at regular intervals regardless of the price. It buys more units when prices are low and fewer when prices are high, and it spreads out the timing of purchases rather than investing everything at once.",
    ),
    (
        "What is inflation?",
        "Inflation is the general rise in the prices of goods and services over time, which reduces the purchasing power of money. It is commonly measured by the annual percentage change in a price index such as the consumer price index.",
    ),
    (
        "What is a credit score?",
        "A credit score is a number that summarizes a person's creditworthiness based on their credit history, such as payment record, amounts owed, length of credit history and recent applications. Lenders use it to estimate the likelihood that a borrower will repay on time.",
    ),
    (
        "What is amortization of a loan?",
        "Loan amortization is paying off a debt through a schedule of regular payments that cover both interest and principal. Early payments are mostly interest; as the balance falls, a larger share of each payment goes toward principal until the loan is repaid.",
    ),
    (
        "What is beta in finance?",
        "Beta measures how much a stock's returns tend to move relative to the overall market. A beta of 1 means it has historically moved in line with the market, above 1 means more volatile than the market, and below 1 means less volatile.",
    ),
    (
        "What is the Sharpe ratio?",
        "The Sharpe ratio measures risk-adjusted return: (portfolio return − risk-free rate) ÷ standard deviation of the portfolio's returns. A higher Sharpe ratio means more excess return was earned per unit of volatility.",
    ),
    (
        "What is compound interest?",
        "Compound interest is interest calculated on the original principal plus interest that has already been added. Because interest earns interest, balances grow faster over time than with simple interest.",
    ),
    (
        "What is simple interest?",
        "Simple interest is calculated only on the original principal: interest = principal × rate × time. Interest earned in earlier periods does not itself earn interest.",
    ),
    (
        "What is present value?",
        "Present value is what a future amount of money is worth today, found by discounting it at an appropriate interest rate: PV = FV ÷ (1 + r)^t. It reflects the idea that money available now can be invested to earn a return.",
    ),
    (
        "What is the time value of money?",
        "The time value of money is the principle that a sum of money today is worth more than the same sum in the future, because money available now can be invested to earn a return and is not eroded by inflation or uncertainty.",
    ),
    (
        "What is a discount rate?",
        "In valuation, a discount rate is the rate of return used to convert future cash flows into present value. It reflects the time value of money and the risk of the cash flows; a higher discount rate gives a lower present value.",
    ),
    (
        "What is net present value (NPV)?",
        "Net present value is the sum of the present values of all cash inflows and outflows of a project, discounted at a chosen rate. A positive NPV means the project is expected to earn more than the discount rate.",
    ),
    (
        "What is the internal rate of return (IRR)?",
        "The internal rate of return is the discount rate at which a project's net present value equals zero. It can be compared with the cost of capital: a project whose IRR exceeds its cost of capital is expected to add value.",
    ),
    (
        "What is a bond?",
        "A bond is a loan from an investor to a borrower such as a government or company. The issuer typically pays periodic interest, called coupons, and repays the face value when the bond matures.",
    ),
    (
        "What is a bond's coupon rate?",
        "The coupon rate is the annual interest a bond pays, expressed as a percentage of its face value. A $1,000 bond with a 5% coupon pays $50 per year, often split into two semiannual payments.",
    ),
    (
        "What is yield to maturity?",
        "Yield to maturity is the total annual return an investor would earn by buying a bond at its current price and holding it until maturity, assuming all payments are made and coupons are reinvested at the same rate. It is the discount rate that makes the present value of the bond's cash flows equal its price.",
    ),
    (
        "Why do bond prices fall when interest rates rise?",
        "When market interest rates rise, newly issued bonds pay higher coupons, so existing bonds with lower fixed coupons become less attractive. Their prices fall until their yields are competitive with new bonds.",
    ),
    (
        "What is credit risk?",
        "Credit risk is the risk that a borrower fails to make required interest or principal payments. Lenders and bond investors usually demand higher interest rates from borrowers they consider riskier.",
    ),
    (
        "What does it mean when a borrower defaults?",
        "A default occurs when a borrower fails to meet the terms of a debt, most commonly by missing an interest or principal payment. It can lead to penalties, damage to credit ratings, legal action or restructuring of the debt.",
    ),
    (
        "What is a credit rating?",
        "A credit rating is an assessment by a rating agency of a borrower's ability to repay debt, expressed as a letter grade such as AAA or BB. Bonds rated BBB− or higher (or Baa3 on Moody's scale) are called investment grade.",
    ),
    (
        "What is a share of stock?",
        "A share of stock represents a unit of ownership in a company. Shareholders may benefit from dividends and from increases in the share price, and common shareholders usually have voting rights.",
    ),
    (
        "What is a dividend?",
        "A dividend is a distribution of a company's profits to its shareholders, usually paid in cash on a per-share basis. Companies are not required to pay dividends and can raise, cut or suspend them.",
    ),
    (
        "What does dividend yield tell you?",
        "Dividend yield is a stock's annual dividends per share divided by its share price. It shows the cash income return from dividends relative to the price, not counting any change in the share price.",
    ),
    (
        "What is the price-to-earnings (P/E) ratio?",
        "The P/E ratio is a company's share price divided by its earnings per share. It shows how much investors are paying for each dollar of earnings; a higher P/E often reflects expectations of faster growth or lower risk.",
    ),
    (
        "What is earnings per share (EPS)?",
        "Earnings per share is a company's net income, minus any preferred dividends, divided by the weighted average number of common shares outstanding. It expresses profit on a per-share basis.",
    ),
    (
        "What is market capitalization?",
        "Market capitalization is the total market value of a company's shares: share price multiplied by the number of shares outstanding. It is commonly used to classify companies as large-, mid- or small-cap.",
    ),
    (
        "What is a balance sheet?",
        "A balance sheet is a financial statement that shows a company's assets, liabilities and shareholders' equity at a specific point in time. It always balances: assets = liabilities + equity.",
    ),
    (
        "What is an income statement?",
        "An income statement reports a company's revenues, expenses and profit over a period such as a quarter or year. It typically moves from revenue through gross profit and operating income down to net income.",
    ),
    (
        "What is a cash flow statement?",
        "A cash flow statement shows how cash moved in and out of a business over a period, split into operating, investing and financing activities. It reveals whether profits are actually turning into cash.",
    ),
    (
        "What is the difference between assets and liabilities?",
        "Assets are resources a business owns or controls that are expected to provide future economic benefit, such as cash, inventory and equipment. Liabilities are obligations it owes to others, such as loans, accounts payable and accrued wages.",
    ),
    (
        "What is shareholders' equity?",
        "Shareholders' equity is the owners' residual claim on a company after all liabilities are paid: total assets minus total liabilities. It includes capital paid in by shareholders and retained earnings.",
    ),
    (
        "What does the current ratio measure?",
        "The current ratio is current assets divided by current liabilities. It measures a company's ability to pay obligations due within a year; a ratio above 1 means current assets exceed current liabilities.",
    ),
    (
        "What is the quick ratio?",
        "The quick ratio, or acid-test ratio, divides a company's most liquid assets, namely cash, marketable securities and accounts receivable, by current liabilities. It is stricter than the current ratio because it excludes inventory.",
    ),
    (
        "What does the debt-to-equity ratio show?",
        "The debt-to-equity ratio compares a company's debt (or total liabilities, depending on the definition used) with its shareholders' equity. It indicates how much the business relies on borrowed money versus owners' funds; higher values mean more financial leverage.",
    ),
    (
        "What is gross margin?",
        "Gross margin is gross profit divided by revenue, where gross profit is revenue minus cost of goods sold. It shows the share of each sales dollar left after paying the direct costs of producing goods or services.",
    ),
    (
        "What is net profit margin?",
        "Net profit margin is net income divided by revenue. It shows how much of each dollar of sales remains as profit after all expenses, including operating costs, interest and taxes.",
    ),
    (
        "What is operating margin?",
        "Operating margin is operating income divided by revenue. It measures the profitability of a company's core operations before interest and taxes.",
    ),
    (
        "What is return on investment (ROI)?",
        "Return on investment measures the gain or loss on an investment relative to its cost: ROI = (final value − cost) ÷ cost. It is a simple ratio that does not account for how long the money was invested.",
    ),
    (
        "What is return on equity (ROE)?",
        "Return on equity is net income divided by shareholders' equity. It shows how much profit a company generates with the money shareholders have invested and retained in the business.",
    ),
    (
        "What is return on assets (ROA)?",
        "Return on assets is net income divided by total assets. It measures how efficiently a company uses its assets to produce profit.",
    ),
    (
        "What is CAGR?",
        "CAGR, the compound annual growth rate, is the constant yearly rate at which a value would have grown from its starting amount to its ending amount over a period: CAGR = (ending ÷ beginning)^(1/years) − 1. It smooths out year-to-year fluctuations.",
    ),
    (
        "What is free cash flow?",
        "Free cash flow is the cash a company generates from operations after paying for capital expenditures. It is commonly calculated as operating cash flow minus capital expenditures and represents cash available for debt repayment, dividends, buybacks or reinvestment.",
    ),
    (
        "What is depreciation?",
        "Depreciation is the accounting practice of spreading the cost of a long-lived tangible asset, such as machinery or a building, over its useful life. It is a non-cash expense that reduces reported profit.",
    ),
    (
        "What is the difference between depreciation and amortization?",
        "Both spread the cost of a long-term asset over its useful life. Depreciation applies to tangible assets such as equipment and buildings, while amortization applies to intangible assets such as patents and software licenses.",
    ),
    (
        "What is accrual accounting?",
        "Accrual accounting records revenues when they are earned and expenses when they are incurred, regardless of when cash changes hands. It contrasts with cash accounting, which records transactions only when cash is received or paid.",
    ),
    (
        "What is the difference between revenue and profit?",
        "Revenue is the total income from selling goods or services before any costs are subtracted. Profit is what remains after expenses are deducted from revenue; a company can have high revenue and still make a loss.",
    ),
    (
        "What is the break-even point?",
        "The break-even point is the level of sales at which total revenue equals total costs, so there is neither profit nor loss. In units it equals fixed costs divided by the contribution margin per unit (price minus variable cost per unit).",
    ),
    (
        "What is the difference between fixed and variable costs?",
        "Fixed costs, such as rent and salaried staff, stay the same regardless of how much a business produces in the short run. Variable costs, such as raw materials, change in proportion to the level of production or sales.",
    ),
    (
        "What is contribution margin?",
        "Contribution margin is the selling price per unit minus the variable cost per unit. It is the amount each unit sold contributes toward covering fixed costs and then generating profit.",
    ),
    (
        "What is an index fund?",
        "An index fund is a mutual fund or ETF that aims to match the performance of a market index, such as a broad stock index, by holding the same securities in similar proportions. Index funds are passively managed and usually have low fees.",
    ),
    (
        "What is an expense ratio?",
        "An expense ratio is the annual fee a fund charges, expressed as a percentage of the assets invested. An expense ratio of 0.20% costs $2 per year for every $1,000 invested and is deducted from the fund's returns.",
    ),
    (
        "What is asset allocation?",
        "Asset allocation is how a portfolio is divided among broad asset classes such as stocks, bonds and cash. It is a major driver of a portfolio's risk and return and is usually chosen based on goals, time horizon and risk tolerance.",
    ),
    (
        "What does rebalancing a portfolio mean?",
        "Rebalancing is buying and selling holdings to bring a portfolio back to its target asset allocation after market movements have shifted the weights. For example, if stocks rise and grow beyond their target share, some are sold and the proceeds moved to other asset classes.",
    ),
    (
        "What is risk tolerance?",
        "Risk tolerance is the degree of variability in investment returns, including possible losses, that an investor is willing and able to accept. It depends on factors such as financial situation, time horizon and personal comfort with uncertainty.",
    ),
    (
        "What is volatility in financial markets?",
        "Volatility is how much and how quickly the price of an asset moves up and down over time. It is often measured by the standard deviation of returns; higher volatility means larger price swings.",
    ),
    (
        "How is standard deviation used in finance?",
        "In finance, standard deviation measures how widely an investment's returns are spread around their average. It is a common measure of risk: a higher standard deviation means returns have been less predictable.",
    ),
    (
        "Why does correlation matter in a portfolio?",
        "Correlation measures how closely two assets' returns move together, on a scale from −1 to +1. Combining assets with low or negative correlation can reduce a portfolio's overall volatility because their ups and downs partly offset each other.",
    ),
    (
        "What is the difference between systematic and unsystematic risk?",
        "Systematic risk, or market risk, affects the whole market, for example recessions or interest-rate changes, and cannot be diversified away. Unsystematic risk is specific to a company or industry, such as a product failure, and can be reduced through diversification.",
    ),
    (
        "What is alpha in investing?",
        "Alpha is the return of an investment above or below what would be expected given its risk, often measured against a benchmark index. Positive alpha means the investment outperformed its benchmark after adjusting for risk.",
    ),
    (
        "What is a bull market?",
        "A bull market is a period in which prices in a financial market are rising or expected to rise, typically accompanied by investor optimism. The term is most often used for stock markets.",
    ),
    (
        "What is a bear market?",
        "A bear market is a prolonged decline in market prices, commonly defined as a fall of 20% or more from a recent high. It is usually accompanied by widespread pessimism.",
    ),
    (
        "What is a market correction?",
        "A market correction is a decline of roughly 10% to 20% in a stock index or asset price from its recent peak. Corrections are a common part of market cycles and can be short-lived.",
    ),
    (
        "What is a recession?",
        "A recession is a significant, widespread decline in economic activity lasting more than a few months, visible in output, employment, income and spending. A common rule of thumb is two consecutive quarters of falling real GDP.",
    ),
    (
        "What is GDP?",
        "Gross domestic product (GDP) is the total market value of all final goods and services produced within a country over a period. Real GDP adjusts for inflation and is the main measure of economic growth.",
    ),
    (
        "What does a central bank do?",
        "A central bank manages a country's money supply and interest rates, aims to keep inflation stable, supervises parts of the banking system and acts as a lender of last resort to banks in a crisis.",
    ),
    (
        "What is monetary policy?",
        "Monetary policy is how a central bank influences money and credit conditions, mainly by setting short-term interest rates and, at times, buying or selling financial assets. It is used to pursue goals such as stable inflation and employment.",
    ),
    (
        "What is fiscal policy?",
        "Fiscal policy is the government's use of spending and taxation to influence the economy. Increasing spending or cutting taxes is expansionary, while cutting spending or raising taxes is contractionary.",
    ),
    (
        "How do higher interest rates affect borrowers?",
        "Higher interest rates make new borrowing more expensive and raise payments on variable-rate debt such as adjustable-rate mortgages and many credit cards. This tends to reduce borrowing and spending.",
    ),
    (
        "What is quantitative easing?",
        "Quantitative easing is a monetary policy in which a central bank buys large amounts of financial assets, usually government bonds, to push down longer-term interest rates and increase the money supply when short-term rates are already near zero.",
    ),
    (
        "What is deflation?",
        "Deflation is a sustained fall in the general price level. Although lower prices can seem beneficial, persistent deflation can lead consumers to delay spending and increases the real burden of debt.",
    ),
    (
        "What is stagflation?",
        "Stagflation is a combination of high inflation, slow or negative economic growth and high unemployment. It is difficult for policymakers because measures to reduce inflation can further weaken growth.",
    ),
    (
        "What is the consumer price index (CPI)?",
        "The consumer price index tracks the average change over time in the prices paid by consumers for a representative basket of goods and services. Its percentage change is a common measure of inflation.",
    ),
    (
        "What is the difference between nominal and real interest rates?",
        "The nominal interest rate is the stated rate before adjusting for inflation. The real interest rate adjusts for inflation and reflects the change in purchasing power: exactly, (1 + nominal) ÷ (1 + inflation) − 1, often approximated as nominal minus inflation.",
    ),
    (
        "What is the difference between APR and APY?",
        "APR (annual percentage rate) is the yearly interest rate without the effect of compounding. APY (annual percentage yield) includes compounding within the year, so with more than one compounding period per year, the APY is higher than the APR.",
    ),
    (
        "What is an effective annual rate?",
        "The effective annual rate is the interest rate actually earned or paid in a year once compounding is included: EAR = (1 + APR/n)^n − 1, where n is the number of compounding periods per year.",
    ),
    (
        "What is a mortgage?",
        "A mortgage is a loan used to buy real estate, in which the property serves as collateral. If the borrower fails to repay, the lender can take possession of the property through foreclosure.",
    ),
    (
        "What is the difference between a fixed-rate and an adjustable-rate mortgage?",
        "A fixed-rate mortgage keeps the same interest rate, and therefore the same principal-and-interest payment, for the whole term. An adjustable-rate mortgage has a rate that resets periodically based on a benchmark, so payments can rise or fall.",
    ),
    (
        "What is the principal of a loan?",
        "The principal is the amount originally borrowed, or the part of the loan balance still owed, not including interest. Each loan payment usually covers interest plus some repayment of principal.",
    ),
    (
        "What is collateral?",
        "Collateral is an asset a borrower pledges to a lender as security for a loan. If the borrower defaults, the lender can seize and sell the collateral to recover what is owed.",
    ),
    (
        "What is the difference between secured and unsecured loans?",
        "A secured loan is backed by collateral, such as a house for a mortgage or a car for an auto loan. An unsecured loan, such as most credit cards, has no collateral, so lenders rely on creditworthiness and usually charge higher rates.",
    ),
    (
        "What is credit utilization?",
        "Credit utilization is the share of available revolving credit that a borrower is currently using, for example a $1,500 balance on a $5,000 limit is 30% utilization. It is one of the factors used in many credit scoring models.",
    ),
    (
        "What is an emergency fund?",
        "An emergency fund is money set aside in an easily accessible account to cover unexpected expenses or a loss of income, so that the person does not have to borrow or sell investments at a bad time.",
    ),
    (
        "What is a budget?",
        "A budget is a plan that estimates income and expenses over a period, such as a month. It helps track where money goes and allocate it among spending, saving and debt repayment.",
    ),
    (
        "What is net worth?",
        "Net worth is the value of everything a person or organization owns minus everything it owes: total assets minus total liabilities.",
    ),
    (
        "What does it mean for an asset to be liquid?",
        "An asset is liquid if it can be converted into cash quickly without significantly lowering its price. Cash and large-company stocks are highly liquid, while real estate and private businesses are relatively illiquid.",
    ),
    (
        "What is a bid-ask spread?",
        "The bid-ask spread is the difference between the highest price a buyer is willing to pay (the bid) and the lowest price a seller is willing to accept (the ask). Narrow spreads usually indicate a liquid market.",
    ),
    (
        "What is the difference between a market order and a limit order?",
        "A market order buys or sells immediately at the best available price, so execution is likely but the price is not guaranteed. A limit order buys or sells only at a specified price or better, so the price is controlled but the order may not be filled.",
    ),
    (
        "What is a stop-loss order?",
        "A stop-loss order is an instruction to sell a security once its price falls to a specified level, the stop price. When triggered it usually becomes a market order, so the sale price can differ from the stop price in fast markets.",
    ),
    (
        "What is short selling?",
        "Short selling is borrowing shares and selling them, hoping to buy them back later at a lower price and return them to the lender. The short seller profits if the price falls, but losses are theoretically unlimited if the price rises.",
    ),
    (
        "What is a margin account?",
        "A margin account is a brokerage account that lets an investor borrow money from the broker to buy securities, using the account's holdings as collateral. It magnifies both gains and losses and can trigger a margin call if the account value falls too far.",
    ),
    (
        "What is financial leverage?",
        "Financial leverage is using borrowed money to increase the size of an investment or operation. It can amplify returns on equity when things go well, but it also amplifies losses and increases the risk of financial distress.",
    ),
    (
        "What is hedging?",
        "Hedging is taking a position intended to offset potential losses in another position, for example buying a put option on a stock already owned or using a futures contract to lock in a price. It reduces risk but usually has a cost.",
    ),
    (
        "What is a futures contract?",
        "A futures contract is a standardized, exchange-traded agreement to buy or sell an asset at a set price on a specified future date. Futures are used both for hedging price risk and for speculation.",
    ),
    (
        "What is a derivative?",
        "A derivative is a financial contract whose value depends on the price of an underlying asset, rate or index. Options, futures, forwards and swaps are common examples.",
    ),
    (
        "What is an IPO?",
        "An initial public offering (IPO) is the first sale of a company's shares to the public, after which the shares trade on a stock exchange. It lets the company raise capital and gives early owners a way to sell shares.",
    ),
    (
        "What is a stock split?",
        "A stock split increases the number of a company's shares while proportionally reducing the price per share, for example a 2-for-1 split turns one $100 share into two $50 shares. The company's total market value is unchanged.",
    ),
    (
        "What is a share buyback?",
        "A share buyback, or repurchase, is when a company buys its own shares from the market. It reduces the number of shares outstanding, which raises earnings per share, and is one way of returning cash to shareholders.",
    ),
    (
        "How do stocks and bonds differ?",
        "Stocks represent ownership in a company and offer a share of profits and growth but have no promised return. Bonds are loans to an issuer that pay fixed interest and return principal at maturity, and they rank ahead of stock if the issuer fails.",
    ),
    (
        "What are Treasury bills?",
        "Treasury bills are short-term U.S. government debt securities with maturities of up to one year. They are sold at a discount to face value and pay the full face value at maturity; the difference is the investor's interest.",
    ),
    (
        "What are municipal bonds?",
        "Municipal bonds are debt securities issued by states, cities and other local government entities to fund public projects. In the United States their interest is often exempt from federal income tax.",
    ),
    (
        "What are high-yield bonds?",
        "High-yield bonds, also called junk bonds, are bonds rated below investment grade. They pay higher interest to compensate investors for a greater risk of default.",
    ),
    (
        "What is a REIT?",
        "A real estate investment trust (REIT) is a company that owns, operates or finances income-producing real estate. Many REITs trade on exchanges and are required to distribute most of their taxable income to shareholders.",
    ),
    (
        "What is a capital gain?",
        "A capital gain is the profit from selling an asset for more than its purchase price (its cost basis). If the asset is sold for less, the result is a capital loss.",
    ),
    (
        "What is the difference between realized and unrealized gains?",
        "An unrealized gain is an increase in the value of an asset that is still held; it exists only on paper. A gain becomes realized when the asset is sold, which in many tax systems is when it may become taxable.",
    ),
    (
        "Why can average annual return differ from CAGR?",
        "The arithmetic average of yearly returns ignores compounding, so it overstates growth when returns vary. For example, +50% followed by −50% averages 0%, but $100 becomes $75, a CAGR of about −13.4%.",
    ),
    (
        "What is the rule of 72?",
        "The rule of 72 is a shortcut for estimating how many years it takes an investment to double: divide 72 by the annual interest rate in percent. At 8% per year, money doubles in about 72 ÷ 8 = 9 years.",
    ),
    (
        "What is opportunity cost?",
        "Opportunity cost is the value of the next-best alternative given up when making a choice. For example, money spent on one project cannot earn the return it might have earned elsewhere.",
    ),
    (
        "What is a sunk cost?",
        "A sunk cost is money already spent that cannot be recovered. Sound decisions about the future should generally ignore sunk costs and focus on future costs and benefits.",
    ),
    (
        "What is WACC?",
        "The weighted average cost of capital (WACC) is a company's average cost of financing, weighting the cost of equity and the after-tax cost of debt by their shares of total capital. It is often used as the discount rate for a company's projects.",
    ),
    (
        "What is the cost of equity?",
        "The cost of equity is the return shareholders require for investing in a company, given its risk. It is often estimated with the capital asset pricing model: risk-free rate + beta × market risk premium.",
    ),
    (
        "What is goodwill on a balance sheet?",
        "Goodwill is an intangible asset recorded when one company buys another for more than the fair value of its identifiable net assets. It reflects things like brand, customer relationships and expected synergies, and is tested for impairment.",
    ),
    (
        "What are accounts receivable?",
        "Accounts receivable are amounts customers owe a business for goods or services delivered on credit. They are recorded as a current asset on the balance sheet.",
    ),
    (
        "What are accounts payable?",
        "Accounts payable are amounts a business owes its suppliers for goods or services bought on credit. They are recorded as a current liability.",
    ),
    (
        "What does inventory turnover measure?",
        "Inventory turnover is cost of goods sold divided by average inventory. It shows how many times a company sells and replaces its inventory in a period; higher turnover generally means inventory moves faster.",
    ),
    (
        "What is counterparty risk?",
        "Counterparty risk is the risk that the other party to a financial contract, such as a derivative or loan, fails to fulfil its obligations.",
    ),
    (
        "What is an exchange rate?",
        "An exchange rate is the price of one currency in terms of another, for example how many euros one U.S. dollar buys. Rates can be floating, set by market supply and demand, or fixed by a government or central bank.",
    ),
    (
        "What are inflation-protected bonds?",
        "Inflation-protected bonds, such as U.S. Treasury Inflation-Protected Securities (TIPS), have a principal value that is adjusted with an inflation index, so interest payments and the amount repaid rise with inflation.",
    ),
    (
        "What is an annuity in financial mathematics?",
        "In financial mathematics, an annuity is a series of equal payments made at regular intervals, such as loan payments or regular savings deposits. An ordinary annuity pays at the end of each period and an annuity due pays at the beginning.",
    ),
    (
        "What is a perpetuity?",
        "A perpetuity is a stream of equal payments that continues forever. Its present value is the payment divided by the discount rate, so $100 per year discounted at 5% is worth $2,000.",
    ),
    (
        "What is enterprise value?",
        "Enterprise value is a measure of a company's total value: market capitalization plus debt (and other claims such as preferred stock) minus cash and cash equivalents. It is often compared with EBITDA.",
    ),
    (
        "What is book value?",
        "Book value is the value of a company's equity as recorded on its balance sheet: total assets minus total liabilities. Book value per share divides this by the number of shares outstanding.",
    ),
    (
        "What is the price-to-book ratio?",
        "The price-to-book ratio is a company's share price divided by its book value per share, or equivalently market capitalization divided by shareholders' equity. It compares the market's valuation with the accounting value of equity.",
    ),
    (
        "What is liquidity risk?",
        "Liquidity risk is the risk that an asset cannot be sold quickly without a significant price concession, or that a business cannot raise cash to meet obligations when they fall due.",
    ),
    (
        "What is a money market fund?",
        "A money market fund is a mutual fund that invests in short-term, high-quality debt such as Treasury bills and commercial paper. It aims to preserve capital and provide liquidity while paying a modest yield, although it is not the same as an insured bank deposit.",
    ),
    (
        "What is a certificate of deposit (CD)?",
        "A certificate of deposit is a bank deposit that pays a fixed interest rate for a fixed term, such as one year. Withdrawing the money before the term ends usually incurs a penalty.",
    ),
    (
        "What is a 401(k) plan?",
        "A 401(k) is a U.S. employer-sponsored retirement savings plan in which employees contribute part of their pay, often with an employer match. Contributions are invested and receive tax advantages, with limits and withdrawal rules set by law.",
    ),
]

# Longer explanations (150-250 words) for length variance.
LONG_CONCEPTS = [
    (
        "Explain in detail how diversification reduces risk in a portfolio.",
        "Diversification reduces risk by combining investments whose returns do not move perfectly together. Every stock carries two kinds of risk. Systematic, or market, risk comes from forces that affect almost all companies, such as recessions, interest-rate changes or shifts in investor sentiment. Unsystematic risk is specific to one company or industry: a failed product launch, a lawsuit, a factory fire or a management mistake. When a portfolio holds only a few stocks, one company's bad news can cause a large loss. As more holdings are added, company-specific surprises tend to partly offset each other, because good news at one firm often coincides with bad news at another. The portfolio's volatility therefore falls, often sharply at first and then more slowly as the number of holdings grows. The benefit depends on correlation: assets with low or negative correlation reduce risk the most, while holding many highly correlated assets, such as several companies in the same narrow sector, helps less. Diversification can also extend across asset classes, such as stocks, bonds and cash, and across countries. Its limits are important. It cannot remove systematic risk, so a diversified stock portfolio still falls in a broad market decline, and correlations between assets can rise during crises. Diversification manages risk; it does not guarantee a profit or protect against all losses.",
    ),
    (
        "Explain how bond prices, yields and interest-rate risk are connected.",
        "A typical bond pays a fixed coupon each year and returns its face value at maturity. Its price is the present value of those future payments, discounted at the yield the market currently demands. Because the payments are fixed, price and yield move in opposite directions. If market interest rates rise, investors can buy new bonds with higher coupons, so an existing bond with a lower coupon must fall in price until its yield to maturity matches the market. If rates fall, existing bonds with higher coupons become more valuable and their prices rise. How strongly a bond's price reacts is measured by duration. Duration is roughly the weighted-average time until the bond's cash flows are received, and modified duration estimates the percentage price change for a one percentage point change in yield. Long-maturity bonds and bonds with low coupons have higher durations, so they are more sensitive to rate changes; short-term bonds and high-coupon bonds are less sensitive. For example, a bond with a modified duration of 7 would lose roughly 7% of its value if yields rose by one percentage point. This sensitivity is called interest-rate risk. It matters most to investors who may sell before maturity; an investor who holds a high-quality bond to maturity still receives the promised coupons and face value, assuming the issuer does not default.",
    ),
    (
        "Walk me through how a fixed-rate mortgage amortizes over its term.",
        "With a fixed-rate mortgage, the borrower pays the same amount every month for the whole term, for example 360 payments over 30 years. That payment is calculated with the amortization formula so that, after the last payment, the balance is exactly zero. Each month, interest is charged on the balance still outstanding: the monthly rate, which is the annual rate divided by 12, times the current balance. Whatever is left of the payment after interest goes toward principal and reduces the balance. At the start, the balance is at its largest, so interest takes most of the payment and only a small part repays principal. As the balance shrinks, the interest portion falls and the principal portion grows, even though the total payment never changes. On a long mortgage at a moderate rate, it can take many years before more than half of each payment goes to principal, which is why the balance falls slowly at first and more quickly near the end. An amortization schedule lists every payment with its interest part, principal part and remaining balance. Extra payments toward principal lower the balance sooner, which reduces future interest and can shorten the term. The total interest paid over the life of the loan is the sum of all payments minus the amount borrowed, and it grows with both the interest rate and the length of the term. Property taxes and insurance, if included in the payment, are separate from this calculation.",
    ),
    (
        "Explain compound interest and why the length of time invested matters so much.",
        "Compound interest means that interest is added to the balance and then earns interest itself. With simple interest, $1,000 at 5% earns $50 every year, so after 30 years it has earned $1,500 and is worth $2,500. With annual compounding, the first year also earns $50, but the second year earns 5% of $1,050, which is $52.50, and each later year earns a little more than the one before. The balance follows FV = P(1 + r)^t, so after 30 years it is about $1,000 × 1.05^30 ≈ $4,322. The extra $1,822 compared with simple interest comes entirely from interest earned on past interest. Because growth is exponential, time has an outsized effect: the amount added in the last few years is much larger than in the first few years. Doubling the time from 15 to 30 years does not double the gain; it more than triples it in this example, from about $1,079 to about $3,322. The rate matters in a similar way, and more frequent compounding, such as monthly rather than yearly, adds a little more. The same mathematics works against borrowers: unpaid interest on debt such as a credit card balance is added to the balance and then charged interest too. Inflation, fees and taxes reduce the real growth, so the nominal figures overstate gains in purchasing power.",
    ),
    (
        "Explain what an inverted yield curve is and why people pay attention to it.",
        "A yield curve plots the yields of bonds with similar credit quality, usually government bonds, against their maturities, from a few months to 30 years. Normally the curve slopes upward: lending money for longer usually requires a higher yield because the lender faces more uncertainty about inflation and interest rates. The curve is inverted when short-term yields are higher than long-term yields, for example when a two-year government note yields more than a ten-year note. Short-term yields are closely tied to the central bank's policy rate, so they rise when the central bank tightens policy to fight inflation. Long-term yields reflect expectations about future short-term rates and inflation plus a term premium. If investors expect the economy to slow and the central bank to cut rates later, long-term yields can fall below short-term yields. People watch inversions because, in the United States, they have preceded most recessions of recent decades, often by a year or more. The signal is not perfect: the timing varies widely, there have been false signals, and changes in the term premium or global demand for long-term bonds can distort the curve. An inversion also matters directly for banks, which often borrow short-term and lend long-term, because it squeezes the margin between their funding costs and lending rates. It is one indicator among many, not a forecast on its own.",
    ),
    (
        "Explain the basics of stock options, including calls, puts and what can be gained or lost.",
        "An option is a contract that gives its buyer a right, but not an obligation, to trade an underlying asset, such as 100 shares of a stock, at a fixed strike price until or on an expiration date. The buyer pays the seller, also called the writer, a premium for this right. A call option gives the right to buy. If the stock rises above the strike, the call has intrinsic value equal to the stock price minus the strike; if the stock stays below the strike at expiration, the call expires worthless and the buyer loses the premium. A put option gives the right to sell. It gains intrinsic value when the stock falls below the strike and expires worthless if the stock stays above it. For buyers, the maximum loss is the premium paid, while the potential gain can be large. Sellers take the other side: they collect the premium but must buy or sell the shares if the option is exercised, and an uncovered call writer faces theoretically unlimited losses if the stock keeps rising. Before expiration, an option's price includes time value in addition to intrinsic value. Time value depends on the time remaining, the volatility of the underlying asset and interest rates, and it tends to shrink as expiration approaches. Options are used to hedge existing positions, to generate income, or to speculate, and their leverage means small price moves in the stock can cause large percentage changes in the option's value.",
    ),
    (
        "Compare index funds and actively managed funds in detail.",
        "An index fund tries to match the return of a market index, such as a broad stock index, by holding the securities in that index in roughly the same proportions. It does not attempt to pick winners or time the market, so trading is limited to following changes in the index and handling investor flows. An actively managed fund employs managers or analysts who select securities and decide when to buy and sell, aiming to beat a benchmark or to control risk in a particular way. Costs are a key difference. Index funds generally have low expense ratios and low trading costs, while active funds pay for research and trading, so their fees are usually higher. Because fees are subtracted from returns, an active fund must outperform its benchmark by at least its extra costs just to keep up. Many studies have found that, over long periods, a majority of active funds in several categories trailed comparable index funds after fees, although some managers do outperform and results vary by market and period. Active funds may offer flexibility, such as holding cash, avoiding certain companies or targeting specific strategies, which some investors value. Index funds offer transparency, broad diversification and predictable tracking of the market, but they will fully share in market declines. Tax efficiency, tracking error, the quality of the index and the fund's structure, such as ETF or mutual fund, are further points to compare. Neither approach guarantees positive returns.",
    ),
    (
        "Explain how the income statement, balance sheet and cash flow statement fit together.",
        "The three core financial statements describe a business from different angles and are linked to one another. The income statement covers a period, such as a year. It starts with revenue, subtracts cost of goods sold to reach gross profit, subtracts operating expenses to reach operating income, and then accounts for interest and taxes to arrive at net income. Because it uses accrual accounting, it records revenue when earned and expenses when incurred, not necessarily when cash moves. The balance sheet is a snapshot at a single date. It lists assets, such as cash, receivables, inventory and equipment, and the claims on them: liabilities, such as payables and debt, and shareholders' equity. Net income from the income statement, minus any dividends, flows into retained earnings within equity, which is how the two statements connect. The cash flow statement explains the change in cash between two balance sheets. It begins with net income and adjusts for non-cash items such as depreciation and for changes in working capital, such as rising receivables, to get operating cash flow. It then adds investing flows, such as purchases of equipment, and financing flows, such as borrowing, repaying debt, issuing shares or paying dividends. The ending cash figure matches the cash line on the balance sheet. Reading all three together shows profitability, financial position and whether profits are turning into cash.",
    ),
]


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------


def r2(x, places=2):
    """Round half up (as people do by hand), not Python's round-half-even on binary floats."""
    q = Decimal(1).scaleb(-places)
    return float(Decimal(repr(x)).quantize(q, rounding=ROUND_HALF_UP))


def f2(x, places=2):
    """Number with thousands separators and `places` decimals, rounded half up."""
    return f"{r2(x, places):,.{places}f}"


def money(x):
    """$1,234.56 (negative as -$1,234.56)."""
    v = r2(x)
    s = f"${f2(abs(v))}"
    return "-" + s if v < 0 else s


def money0(x):
    """Whole-dollar amount as used in questions: $12,500."""
    return f"${x:,.0f}"


def pct(x):
    """Fraction -> percentage string with 2 decimals: 0.05123 -> 5.12%."""
    return f"{f2(r2(x * 100))}%"


def rate_str(r):
    """Rate given as a fraction, shown as a percentage in the question: 0.0525 -> 5.25%."""
    s = f"{r * 100:.3f}".rstrip("0").rstrip(".")
    return s + "%"


def dec(r):
    """Rate as a decimal in formulas: 0.0525 -> 0.0525."""
    return f"{r:.6f}".rstrip("0").rstrip(".")


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def pick_rate(rng, lo, hi, step=0.25):
    """Random rate between lo% and hi% in steps of `step` percentage points, as a fraction."""
    k = rng.randint(0, int(round((hi - lo) / step)))
    return round((lo + k * step) / 100, 6)


COMPOUNDING = [
    (1, "annually", "year"),
    (2, "semiannually", "half-year"),
    (4, "quarterly", "quarter"),
    (12, "monthly", "month"),
    (365, "daily", "day"),
]

COMPANIES_SMALL = [
    "Maple Street Bakery",
    "Harbor Bikes",
    "Copperleaf Consulting",
    "Northwind Traders",
    "Bluefin Logistics",
    "Pinecrest Furniture",
    "Riverside Dental Supply",
    "Summit Outdoor Gear",
    "Lakeside Print Shop",
    "Orchard Lane Foods",
    "Granite Peak Software",
    "Sunrise Pet Care",
    "Cedar Hollow Brewing",
    "Silverline Electronics",
    "Meadowbrook Nursery",
    "Redwood Home Services",
    "Tidewater Marine",
    "Foxglove Florists",
    "Ironbridge Tools",
    "Willow Creek Apparel",
]

# Each template returns (instruction, input, output).


def t_compound(rng):
    P = rng.randrange(500, 50001, 100)
    r = pick_rate(rng, 1, 10)
    t = rng.randint(1, 30)
    n, word, _ = rng.choice(COMPOUNDING)
    fv = P * (1 + r / n) ** (n * t)
    q = rng.choice(
        [
            f"If you deposit {money0(P)} at an annual interest rate of {rate_str(r)} compounded {word}, how much will you have after {t} year{'s' if t > 1 else ''}?",
            f"Calculate the future value of {money0(P)} invested for {t} year{'s' if t > 1 else ''} at {rate_str(r)} per year, compounded {word}.",
            f"What will {money0(P)} grow to in {t} year{'s' if t > 1 else ''} at {rate_str(r)} annual interest compounded {word}?",
        ]
    )
    a = f"FV = P(1 + r/n)^(nt) = {P:,} × (1 + {dec(r)}/{n})^({n}×{t}) = {money(fv)}. Interest earned: {money(fv - P)}."
    return q, "", a


def t_continuous(rng):
    P = rng.randrange(1000, 30001, 500)
    r = pick_rate(rng, 1, 9)
    t = rng.randint(2, 25)
    fv = P * math.exp(r * t)
    q = f"What is the future value of {money0(P)} after {t} years at {rate_str(r)} annual interest compounded continuously?"
    a = f"With continuous compounding, FV = P·e^(rt) = {P:,} × e^({dec(r)}×{t}) = {money(fv)}."
    return q, "", a


def t_simple(rng):
    P = rng.randrange(500, 25001, 250)
    r = pick_rate(rng, 2, 12)
    if rng.random() < 0.5:
        months = rng.choice([3, 6, 9, 18, 30])
        t = months / 12
        tdesc = f"{months} months"
        tform = f"({months}/12)"
    else:
        t = rng.randint(1, 10)
        tdesc = f"{t} year{'s' if t > 1 else ''}"
        tform = f"{t}"
    i = P * r * t
    q = rng.choice(
        [
            f"How much simple interest is earned on {money0(P)} at {rate_str(r)} per year for {tdesc}?",
            f"A loan of {money0(P)} charges {rate_str(r)} simple annual interest. What is the interest after {tdesc}, and the total owed?",
        ]
    )
    a = f"I = P × r × t = {P:,} × {dec(r)} × {tform} = {money(i)}. Total = {money(P + i)}."
    return q, "", a


def t_present_value(rng):
    FV = rng.randrange(2000, 100001, 500)
    r = pick_rate(rng, 2, 10)
    t = rng.randint(2, 25)
    pv = FV / (1 + r) ** t
    q = rng.choice(
        [
            f"What is the present value of {money0(FV)} to be received in {t} years if the discount rate is {rate_str(r)} per year?",
            f"How much must be invested today at {rate_str(r)} compounded annually to have {money0(FV)} in {t} years?",
        ]
    )
    a = f"PV = FV / (1 + r)^t = {FV:,} / (1 + {dec(r)})^{t} = {money(pv)}."
    return q, "", a


def t_fv_annuity(rng):
    monthly = rng.random() < 0.6
    r_ann = pick_rate(rng, 2, 9)
    years = rng.randint(3, 40)
    if monthly:
        pmt = rng.randrange(50, 2001, 25)
        r, n = r_ann / 12, years * 12
        fv = pmt * ((1 + r) ** n - 1) / r
        q = (
            f"If you save {money0(pmt)} at the end of every month for {years} years in an account earning "
            f"{rate_str(r_ann)} per year compounded monthly, how much will you have?"
        )
        a = (
            f"Future value of an ordinary annuity: FV = PMT × [(1 + r)^n − 1] / r, with r = {dec(r_ann)}/12 and n = {n}. "
            f"FV = {pmt:,} × [(1 + {dec(r_ann)}/12)^{n} − 1] / ({dec(r_ann)}/12) = {money(fv)}. "
            f"Total deposited: {money(pmt * n)}."
        )
    else:
        pmt = rng.randrange(1000, 20001, 500)
        r, n = r_ann, years
        fv = pmt * ((1 + r) ** n - 1) / r
        q = (
            f"What is the future value of {money0(pmt)} deposited at the end of each year for {years} years "
            f"at {rate_str(r_ann)} annual interest?"
        )
        a = (
            f"FV = PMT × [(1 + r)^n − 1] / r = {pmt:,} × [(1 + {dec(r)})^{n} − 1] / {dec(r)} = {money(fv)}. "
            f"Total deposited: {money(pmt * n)}."
        )
    return q, "", a


def t_pv_annuity(rng):
    pmt = rng.randrange(500, 20001, 250)
    r = pick_rate(rng, 2, 10)
    n = rng.randint(3, 30)
    pv = pmt * (1 - (1 + r) ** -n) / r
    q = (
        f"What is the present value of receiving {money0(pmt)} at the end of each year for {n} years "
        f"if the discount rate is {rate_str(r)}?"
    )
    a = f"PV = PMT × [1 − (1 + r)^(−n)] / r = {pmt:,} × [1 − (1 + {dec(r)})^(−{n})] / {dec(r)} = {money(pv)}."
    return q, "", a


def loan_payment(P, r_ann, months):
    r = r_ann / 12
    return P * r * (1 + r) ** months / ((1 + r) ** months - 1)


def _loan_params(rng):
    kind = rng.choice(["mortgage", "car loan", "personal loan"])
    if kind == "mortgage":
        P = rng.randrange(80000, 750001, 5000)
        r = pick_rate(rng, 3, 8, 0.125)
        years = rng.choice([10, 15, 20, 25, 30])
    elif kind == "car loan":
        P = rng.randrange(8000, 60001, 500)
        r = pick_rate(rng, 2, 12)
        years = rng.choice([3, 4, 5, 6, 7])
    else:
        P = rng.randrange(2000, 40001, 500)
        r = pick_rate(rng, 6, 18)
        years = rng.choice([1, 2, 3, 4, 5])
    return kind, P, r, years


def t_loan_payment(rng):
    kind, P, r, years = _loan_params(rng)
    n = years * 12
    m = loan_payment(P, r, n)
    total_int = r2(m) * n - P
    q = rng.choice(
        [
            f"What is the monthly payment on a {money0(P)} {kind} at {rate_str(r)} APR over {plural(years, 'year')}?",
            f"Calculate the monthly payment for a {years}-year {kind} of {money0(P)} with an annual rate of {rate_str(r)}.",
        ]
    )
    a = (
        f"M = P·r(1 + r)^n / [(1 + r)^n − 1], with r = {dec(r)}/12 and n = {n}. "
        f"M = {money(m)} per month; total interest over the loan is about {money(total_int)}."
    )
    return q, "", a


def t_loan_interest(rng):
    kind, P, r, years = _loan_params(rng)
    n = years * 12
    m = r2(loan_payment(P, r, n))
    q = f"How much total interest will you pay on a {money0(P)} {kind} at {rate_str(r)} for {plural(years, 'year')} with monthly payments?"
    a = (
        f"Monthly payment M = P·r(1 + r)^n / [(1 + r)^n − 1] with r = {dec(r)}/12, n = {n}: {money(m)}. "
        f"Total paid = {money(m)} × {n} = {money(m * n)}, so total interest ≈ {money(m * n - P)}."
    )
    return q, "", a


def t_cagr(rng):
    begin = rng.randrange(1000, 200001, 500)
    years = rng.randint(2, 20)
    growth = rng.uniform(-0.06, 0.18)
    end = round(begin * (1 + growth) ** years / 100) * 100
    if end <= 0 or end == begin:
        end = begin + 1000
    c = (end / begin) ** (1 / years) - 1
    what = rng.choice(["an investment", "a company's annual revenue", "a portfolio", "a fund's assets"])
    q = f"If {what} grew from {money0(begin)} to {money0(end)} over {years} years, what is the compound annual growth rate (CAGR)?"
    a = f"CAGR = (End / Begin)^(1/years) − 1 = ({end:,} / {begin:,})^(1/{years}) − 1 = {pct(c)}."
    return q, "", a


def t_roi(rng):
    cost = rng.randrange(1000, 100001, 250)
    change = rng.uniform(-0.4, 1.2)
    final = round(cost * (1 + change) / 50) * 50
    income = rng.choice([0, 0, rng.randrange(50, max(100, cost // 10), 50)])
    gain = final + income - cost
    roi = gain / cost
    if income:
        q = (
            f"You bought an asset for {money0(cost)}, received {money0(income)} in income while holding it, "
            f"and sold it for {money0(final)}. What is your ROI?"
        )
        a = (
            f"ROI = (sale price + income − cost) / cost = ({final:,} + {income:,} − {cost:,}) / {cost:,} "
            f"= {money(gain)} / {money0(cost)} = {pct(roi)}."
        )
    else:
        q = f"An investment cost {money0(cost)} and is now worth {money0(final)}. What is the return on investment?"
        a = f"ROI = (final value − cost) / cost = ({final:,} − {cost:,}) / {cost:,} = {pct(roi)}."
    return q, "", a


def t_gross_margin(rng):
    co = rng.choice(COMPANIES_SMALL)
    rev = rng.randrange(200000, 5000001, 1000)
    cogs = round(rev * rng.uniform(0.3, 0.85) / 1000) * 1000
    gp = rev - cogs
    ctx = f"{co}: revenue {money0(rev)}; cost of goods sold {money0(cogs)}."
    q = rng.choice(["What is the company's gross margin?", "Calculate the gross profit and gross margin."])
    a = f"Gross profit = {money0(rev)} − {money0(cogs)} = {money(gp)}. Gross margin = {gp:,} / {rev:,} = {pct(gp / rev)}."
    return q, ctx, a


def t_net_margin(rng):
    co = rng.choice(COMPANIES_SMALL)
    rev = rng.randrange(500000, 8000001, 1000)
    cogs = round(rev * rng.uniform(0.35, 0.6) / 1000) * 1000
    opex = round(rev * rng.uniform(0.15, 0.3) / 1000) * 1000
    interest = round(rev * rng.uniform(0.005, 0.03) / 1000) * 1000
    ebt = rev - cogs - opex - interest
    taxes = round(ebt * rng.choice([0.21, 0.25]) / 1000) * 1000
    ni = ebt - taxes
    ctx = (
        f"{co} annual figures: revenue {money0(rev)}; cost of goods sold {money0(cogs)}; "
        f"operating expenses {money0(opex)}; interest expense {money0(interest)}; income taxes {money0(taxes)}."
    )
    q = rng.choice(["What is the net profit margin?", "Compute net income and the net profit margin."])
    a = (
        f"Net income = {rev:,} − {cogs:,} − {opex:,} − {interest:,} − {taxes:,} = {money(ni)}. "
        f"Net margin = net income / revenue = {ni:,} / {rev:,} = {pct(ni / rev)}."
    )
    return q, ctx, a


def t_pe(rng):
    price = round(rng.uniform(8, 400), 2)
    eps = round(price / rng.uniform(6, 45), 2)
    pe = price / eps
    if rng.random() < 0.5:
        q = f"A stock trades at {money(price)} and its earnings per share over the last year were {money(eps)}. What is its P/E ratio?"
        a = f"P/E = price / EPS = {f2(price)} / {f2(eps)} = {f2(pe)}."
    else:
        shares = rng.randrange(5, 500) * 1_000_000
        ni = eps * shares
        q = (
            f"A company has {shares:,} shares outstanding, a share price of {money(price)} and net income of "
            f"{money0(ni)}. What is its P/E ratio?"
        )
        a = (
            f"EPS = {money0(ni)} / {shares:,} = {money(ni / shares)}. "
            f"P/E = {f2(price)} / {f2(ni / shares)} = {f2(price / (ni / shares))}."
        )
    return q, "", a


def t_div_yield(rng):
    price = round(rng.uniform(10, 250), 2)
    annual = round(price * rng.uniform(0.005, 0.07), 2)
    if rng.random() < 0.5:
        quarterly = round(annual / 4, 2)
        annual = quarterly * 4
        q = f"A stock priced at {money(price)} pays a quarterly dividend of {money(quarterly)} per share. What is its dividend yield?"
        a = f"Annual dividend = {f2(quarterly)} × 4 = {money(annual)}. Dividend yield = {f2(annual)} / {f2(price)} = {pct(annual / price)}."
    else:
        q = f"What is the dividend yield of a stock trading at {money(price)} that pays {money(annual)} per share in dividends per year?"
        a = f"Dividend yield = annual dividend / price = {f2(annual)} / {f2(price)} = {pct(annual / price)}."
    return q, "", a


def t_current_ratio(rng):
    co = rng.choice(COMPANIES_SMALL)
    cash = rng.randrange(20, 800) * 1000
    ar = rng.randrange(20, 900) * 1000
    inv = rng.randrange(10, 1200) * 1000
    cl = rng.randrange(60, 1500) * 1000
    ca = cash + ar + inv
    ctx = (
        f"{co} balance sheet (current items): cash {money0(cash)}; accounts receivable {money0(ar)}; "
        f"inventory {money0(inv)}; current liabilities {money0(cl)}."
    )
    if rng.random() < 0.6:
        q = "What is the current ratio?"
        a = f"Current assets = {cash:,} + {ar:,} + {inv:,} = {money(ca)}. Current ratio = {ca:,} / {cl:,} = {f2(ca / cl)}."
    else:
        q = "What is the quick ratio (acid-test ratio)?"
        a = (
            f"Quick assets exclude inventory: {cash:,} + {ar:,} = {money(cash + ar)}. "
            f"Quick ratio = {cash + ar:,} / {cl:,} = {f2((cash + ar) / cl)}."
        )
    return q, ctx, a


def t_debt_equity(rng):
    co = rng.choice(COMPANIES_SMALL)
    assets = rng.randrange(500, 20000) * 1000
    liab = round(assets * rng.uniform(0.2, 0.8) / 1000) * 1000
    eq = assets - liab
    ctx = f"{co}: total assets {money0(assets)}; total liabilities {money0(liab)}."
    q = "Using total liabilities, what is the company's debt-to-equity ratio?"
    a = (
        f"Shareholders' equity = assets − liabilities = {assets:,} − {liab:,} = {money(eq)}. "
        f"Debt-to-equity = {liab:,} / {eq:,} = {f2(liab / eq)}."
    )
    return q, ctx, a


def t_break_even(rng):
    fixed = rng.randrange(5000, 500001, 500)
    price = round(rng.uniform(5, 300), 2)
    var = round(price * rng.uniform(0.2, 0.8), 2)
    cm = round(price - var, 2)
    units = fixed / cm
    units_up = math.ceil(round(units, 9))
    item = rng.choice(["a product", "a candle", "a backpack", "a subscription box", "a coffee grinder", "a phone case"])
    q = (
        f"A business selling {item} has fixed costs of {money0(fixed)}, a selling price of {money(price)} per unit "
        f"and a variable cost of {money(var)} per unit. How many units must it sell to break even?"
    )
    a = (
        f"Contribution margin = {f2(price)} − {f2(var)} = {money(cm)} per unit. Break-even units = fixed costs / contribution margin "
        f"= {fixed:,} / {f2(cm)} = {f2(units)}, so {units_up:,} units (rounding up)."
    )
    return q, "", a


def t_pct_change(rng):
    old = round(rng.uniform(10, 5000), 2)
    new = round(old * (1 + rng.uniform(-0.6, 0.9)), 2)
    ch = (new - old) / old
    thing = rng.choice(
        [
            "A stock's price",
            "A company's quarterly revenue (in $ thousands)",
            "A fund's share price",
            "Monthly rent",
            "The price of a commodity",
        ]
    )
    q = f"{thing} moved from {f2(old)} to {f2(new)}. What is the percentage change?"
    a = (
        f"Percentage change = (new − old) / old = ({f2(new)} − {f2(old)}) / {f2(old)} = {pct(ch)}"
        f" ({'an increase' if ch > 0 else 'a decrease'})."
    )
    return q, "", a


def t_real_return(rng):
    nom = pick_rate(rng, 1, 15)
    inf = pick_rate(rng, 0.5, 9)
    while inf == nom:
        inf = pick_rate(rng, 0.5, 9)
    real = (1 + nom) / (1 + inf) - 1
    q = rng.choice(
        [
            f"An investment returned {rate_str(nom)} in a year when inflation was {rate_str(inf)}. What was the real return?",
            f"If the nominal interest rate is {rate_str(nom)} and inflation is {rate_str(inf)}, what is the exact real rate of return?",
        ]
    )
    a = (
        f"Using the exact Fisher relation: real = (1 + nominal) / (1 + inflation) − 1 = (1 + {dec(nom)}) / (1 + {dec(inf)}) − 1 "
        f"= {pct(real)}. The approximation nominal − inflation gives {pct(nom - inf)}."
    )
    return q, "", a


def t_current_yield(rng):
    face = rng.choice([1000, 1000, 1000, 100, 5000])
    c = pick_rate(rng, 1, 9, 0.125)
    price = round(face * rng.uniform(0.8, 1.2), 2)
    coupon = face * c
    cy = coupon / price
    q = (
        f"A bond with a {money0(face)} face value and a {rate_str(c)} annual coupon trades at {money(price)}. "
        f"What is its current yield?"
    )
    a = f"Annual coupon = {face:,} × {dec(c)} = {money(coupon)}. Current yield = coupon / price = {f2(coupon)} / {f2(price)} = {pct(cy)}."
    return q, "", a


def t_doubling(rng):
    r = pick_rate(rng, 1, 15)
    approx = 72 / (r * 100)
    exact = math.log(2) / math.log(1 + r)
    q = rng.choice(
        [
            f"At {rate_str(r)} annual return compounded annually, how long does it take money to double? Compare the rule of 72 with the exact answer.",
            f"Use the rule of 72 to estimate the doubling time at {rate_str(r)} per year, then give the exact doubling time.",
        ]
    )
    a = f"Rule of 72: 72 / {r * 100:g} = {f2(approx)} years. Exact: t = ln 2 / ln(1 + {dec(r)}) = {f2(exact)} years."
    return q, "", a


def t_ebitda(rng):
    co = rng.choice(COMPANIES_SMALL)
    ni = rng.randrange(50, 3000) * 1000
    interest = rng.randrange(5, 400) * 1000
    taxes = rng.randrange(10, 900) * 1000
    dep = rng.randrange(10, 700) * 1000
    amort = rng.randrange(0, 200) * 1000
    e = ni + interest + taxes + dep + amort
    ctx = (
        f"{co}: net income {money0(ni)}; interest expense {money0(interest)}; income tax expense {money0(taxes)}; "
        f"depreciation {money0(dep)}; amortization {money0(amort)}."
    )
    q = rng.choice(["Calculate EBITDA.", "What is the company's EBITDA?"])
    a = (
        f"EBITDA = net income + interest + taxes + depreciation + amortization = "
        f"{ni:,} + {interest:,} + {taxes:,} + {dep:,} + {amort:,} = {money(e)}. For reference, EBIT = net income + interest + taxes = {money(ni + interest + taxes)}."
    )
    return q, ctx, a


def t_working_capital(rng):
    co = rng.choice(COMPANIES_SMALL)
    cash = rng.randrange(10, 600) * 1000
    ar = rng.randrange(10, 700) * 1000
    inv = rng.randrange(10, 900) * 1000
    ap = rng.randrange(10, 800) * 1000
    std = rng.randrange(0, 500) * 1000
    ca, cl = cash + ar + inv, ap + std
    wc = ca - cl
    ctx = (
        f"{co}: cash {money0(cash)}; accounts receivable {money0(ar)}; inventory {money0(inv)}; "
        f"accounts payable {money0(ap)}; short-term debt {money0(std)}."
    )
    q = "What is the company's working capital?"
    a = (
        f"Current assets = {cash:,} + {ar:,} + {inv:,} = {money(ca)}; current liabilities = {ap:,} + {std:,} = {money(cl)}. "
        f"Working capital = {money(ca)} − {money(cl)} = {money(wc)}."
    )
    return q, ctx, a


def t_eps(rng):
    ni = rng.randrange(100, 50000) * 10000
    pref = rng.choice([0, 0, rng.randrange(1, 50) * 10000])
    pref = min(pref, ni // 2)
    shares = rng.randrange(1, 400) * 1_000_000 + rng.randrange(0, 10) * 100_000
    eps = (ni - pref) / shares
    if pref:
        q = (
            f"A company earned net income of {money0(ni)}, paid {money0(pref)} in preferred dividends and had "
            f"{shares:,} weighted average common shares outstanding. What is its EPS?"
        )
        a = f"EPS = (net income − preferred dividends) / shares = ({ni:,} − {pref:,}) / {shares:,} = {money(eps)}."
    else:
        q = f"What is the earnings per share of a company with net income of {money0(ni)} and {shares:,} shares outstanding?"
        a = f"EPS = net income / shares outstanding = {ni:,} / {shares:,} = {money(eps)}."
    return q, "", a


def t_ear(rng):
    apr = pick_rate(rng, 1, 24)
    n, word, _ = rng.choice(COMPOUNDING[1:])
    ear = (1 + apr / n) ** n - 1
    q = rng.choice(
        [
            f"What is the effective annual rate of an APR of {rate_str(apr)} compounded {word}?",
            f"Convert a nominal annual rate of {rate_str(apr)} compounded {word} to an APY.",
        ]
    )
    a = f"EAR = (1 + APR/n)^n − 1 = (1 + {dec(apr)}/{n})^{n} − 1 = {pct(ear)}."
    return q, "", a


def t_roe_roa(rng):
    co = rng.choice(COMPANIES_SMALL)
    assets = rng.randrange(1000, 30000) * 1000
    eq = round(assets * rng.uniform(0.3, 0.8) / 1000) * 1000
    ni = round(assets * rng.uniform(0.01, 0.15) / 1000) * 1000
    ctx = f"{co}: net income {money0(ni)}; total assets {money0(assets)}; shareholders' equity {money0(eq)}."
    q = "Calculate return on assets (ROA) and return on equity (ROE)."
    a = f"ROA = net income / total assets = {ni:,} / {assets:,} = {pct(ni / assets)}. ROE = net income / equity = {ni:,} / {eq:,} = {pct(ni / eq)}."
    return q, ctx, a


def t_monthly_savings_goal(rng):
    goal = rng.randrange(5000, 200001, 1000)
    r_ann = pick_rate(rng, 1, 8)
    years = rng.randint(2, 20)
    r, n = r_ann / 12, years * 12
    pmt = goal * r / ((1 + r) ** n - 1)
    q = (
        f"How much must you deposit at the end of each month to reach {money0(goal)} in {years} years "
        f"if the account earns {rate_str(r_ann)} per year compounded monthly?"
    )
    a = (
        f"Solve the annuity formula for PMT: PMT = FV × r / [(1 + r)^n − 1], with r = {dec(r_ann)}/12 and n = {n}. "
        f"PMT = {goal:,} × ({dec(r_ann)}/12) / [(1 + {dec(r_ann)}/12)^{n} − 1] = {money(pmt)} per month."
    )
    return q, "", a


# --- Longer worked examples (150-250 words) -------------------------------


def t_long_mortgage(rng):
    P_home = rng.randrange(200000, 900001, 5000)
    down_pct = rng.choice([0.1, 0.15, 0.2, 0.25])
    down = P_home * down_pct
    P = P_home - down
    r = pick_rate(rng, 3, 8, 0.125)
    years = rng.choice([15, 20, 30])
    n = years * 12
    m = r2(loan_payment(P, r, n))
    i1 = r2(P * r / 12)
    p1 = r2(m - i1)
    bal1 = P - p1
    total = m * n
    q = (
        f"Explain step by step the mortgage on a {money0(P_home)} home bought with a {down_pct * 100:.0f}% down payment, "
        f"financed at {rate_str(r)} fixed for {years} years: the loan amount, monthly payment, first month's interest and "
        f"principal split, and total interest."
    )
    a = (
        f"Step 1, loan amount: the down payment is {down_pct * 100:.0f}% of {money0(P_home)}, which is {money(down)}, so the amount "
        f"borrowed is {money0(P_home)} − {money(down)} = {money(P)}. "
        f"Step 2, monthly rate and number of payments: r = {dec(r)} / 12 ≈ {r / 12:.7f} per month, and n = {years} × 12 = {n} payments. "
        f"Step 3, monthly payment: use the amortization formula M = P·r(1 + r)^n / [(1 + r)^n − 1]. Plugging in gives "
        f"M = {money(m)} for principal and interest. "
        f"Step 4, first payment split: interest for the first month is the balance times the monthly rate, "
        f"{money(P)} × {dec(r)} / 12 = {money(i1)}. The rest of the payment, {money(m)} − {money(i1)} = {money(p1)}, "
        f"reduces principal, leaving a balance of {money(bal1)}. Each later month the balance is a little lower, so the "
        f"interest portion falls and the principal portion rises while the payment stays the same. "
        f"Step 5, totals: {n} payments of {money(m)} add up to about {money(total)}, so total interest over the life of "
        f"the loan is about {money(total)} − {money(P)} = {money(total - P)}. Taxes, insurance and fees are not included, "
        f"and because the payment is rounded to the cent, the final payment is adjusted slightly so the balance ends at zero."
    )
    return q, "", a


def t_long_company(rng):
    co = rng.choice(COMPANIES_SMALL)
    rev = rng.randrange(1000, 20000) * 1000
    cogs = round(rev * rng.uniform(0.4, 0.65) / 1000) * 1000
    opex = round(rev * rng.uniform(0.15, 0.25) / 1000) * 1000
    da = round(rev * rng.uniform(0.02, 0.06) / 1000) * 1000
    interest = round(rev * rng.uniform(0.005, 0.02) / 1000) * 1000
    ebit = rev - cogs - opex - da
    ebt = ebit - interest
    tax = round(ebt * 0.25 / 1000) * 1000
    ni = ebt - tax
    ca = round(rev * rng.uniform(0.2, 0.45) / 1000) * 1000
    cl = round(rev * rng.uniform(0.12, 0.3) / 1000) * 1000
    tl = cl + round(rev * rng.uniform(0.1, 0.4) / 1000) * 1000
    eq = round(rev * rng.uniform(0.3, 0.7) / 1000) * 1000
    gp = rev - cogs
    ebitda = ebit + da
    ctx = (
        f"{co} (fiscal year): revenue {money0(rev)}; cost of goods sold {money0(cogs)}; operating expenses excluding "
        f"depreciation and amortization {money0(opex)}; depreciation and amortization {money0(da)}; interest expense "
        f"{money0(interest)}; income taxes {money0(tax)}. Year-end: current assets {money0(ca)}; current liabilities "
        f"{money0(cl)}; total liabilities {money0(tl)}; shareholders' equity {money0(eq)}."
    )
    q = "Analyze these figures: compute gross margin, EBITDA, operating margin, net margin, current ratio, working capital, debt-to-equity and ROE, and briefly explain each."
    a = (
        f"Gross profit is revenue minus cost of goods sold: {rev:,} − {cogs:,} = {money(gp)}, a gross margin of "
        f"{pct(gp / rev)}, the share of sales left after direct costs. "
        f"EBITDA is gross profit minus operating expenses before depreciation and amortization: {gp:,} − {opex:,} = {money(ebitda)}. "
        f"Subtracting depreciation and amortization of {money0(da)} gives operating income (EBIT) of {money(ebit)}, "
        f"an operating margin of {pct(ebit / rev)}, which reflects profitability of core operations. "
        f"Subtracting interest of {money0(interest)} gives pre-tax income of {money(ebt)}; after taxes of {money0(tax)}, "
        f"net income is {money(ni)}, a net margin of {pct(ni / rev)}. "
        f"On the balance sheet, the current ratio is {ca:,} / {cl:,} = {f2(ca / cl)}, and working capital is "
        f"{ca:,} − {cl:,} = {money(ca - cl)}; both describe short-term liquidity. "
        f"Debt-to-equity, using total liabilities, is {tl:,} / {eq:,} = {f2(tl / eq)}, a measure of leverage. "
        f"Return on equity is net income divided by equity: {ni:,} / {eq:,} = {pct(ni / eq)}, using year-end equity rather "
        f"than an average. These ratios describe one year only; trends over time and comparison with similar businesses "
        f"give more context."
    )
    return q, ctx, a


TEMPLATES = [
    t_compound,
    t_continuous,
    t_simple,
    t_present_value,
    t_fv_annuity,
    t_pv_annuity,
    t_loan_payment,
    t_loan_interest,
    t_cagr,
    t_roi,
    t_gross_margin,
    t_net_margin,
    t_pe,
    t_div_yield,
    t_current_ratio,
    t_debt_equity,
    t_break_even,
    t_pct_change,
    t_real_return,
    t_current_yield,
    t_doubling,
    t_ebitda,
    t_working_capital,
    t_eps,
    t_ear,
    t_roe_roa,
    t_monthly_savings_goal,
]
LONG_TEMPLATES = [t_long_mortgage, t_long_company]


# ---------------------------------------------------------------------------
# Sentiment headlines (fictional companies)
# ---------------------------------------------------------------------------

HEADLINE_COMPANIES = [
    "Acme Corp",
    "Northwind Traders",
    "Bluefin Logistics",
    "Granite Peak Software",
    "Silverline Electronics",
    "Orchard Lane Foods",
    "Helix Biotherapeutics",
    "Vantage Airlines",
    "Cobalt Mining Group",
    "Brightwater Utilities",
    "Quillon Retail",
    "Stratus Cloud Systems",
    "Meridian Bank",
    "Atlas Freight",
    "Polaris Motors",
    "Evergreen Pharma",
    "Ironclad Insurance",
    "Crescent Hotels",
    "Nimbus Semiconductors",
    "Tallgrass Energy Partners",
    "Lumen Apparel",
    "Copperfield Homebuilders",
    "Redstone Chemicals",
    "Seabright Telecom",
    "Harvest Moon Grocers",
]

POSITIVE_TEMPLATES = [
    "{co} raises full-year guidance after record quarterly sales",
    "{co} shares jump {n}% after earnings beat analyst estimates",
    "{co} {pverb} quarterly profit as demand for its products surges",
    "{co} reports record revenue and lifts its dividend by {n}%",
    "{co} wins multibillion-dollar contract, sending its stock sharply higher",
    "{co} upgraded to buy by analysts citing strong growth outlook",
    "{co} posts its strongest sales quarter in company history",
    "{co} beats forecasts and announces a larger share buyback",
    "{co} swings to a profit ahead of expectations as costs fall",
    "{co} stock hits all-time high after blockbuster results",
]
POSITIVE_VERBS = ["doubles", "nearly doubles", "sharply increases", "grows", "boosts"]

NEGATIVE_TEMPLATES = [
    "{co} cuts full-year outlook as demand weakens",
    "{co} shares plunge {n}% after revenue falls short of estimates",
    "{co} to lay off {k} workers amid falling sales",
    "{co} files for bankruptcy protection after failing to refinance debt",
    "{co} {nverb} quarterly loss as costs soar",
    "{co} suspends dividend after steep drop in earnings",
    "{co} downgraded by analysts over mounting debt concerns",
    "{co} recalls products and warns of a hit to profits",
    "{co} misses profit forecasts and slashes guidance",
    "{co} stock sinks to multi-year low after accounting probe announced",
]
NEGATIVE_VERBS = ["reports a wider", "posts a surprise", "swings to a", "warns of a deeper", "books a record"]

NEUTRAL_TEMPLATES = [
    "{co} to report {qtr} results on {day}",
    "{co} will hold its annual shareholder meeting on {day}",
    "{co} names {role} effective next month",
    "{co} to present at an industry conference on {day}",
    "{co} schedules conference call to discuss {qtr} results",
    "{co} completes previously announced relocation of its headquarters to {city}",
    "{co} declares regular quarterly dividend, unchanged from prior quarter",
    "{co} shares close flat as investors await {qtr} results",
    "{co} files annual report with regulators",
    "{co} confirms date for {qtr} earnings release",
]
QUARTERS = ["first-quarter", "second-quarter", "third-quarter", "fourth-quarter"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
ROLES = [
    "a new chief financial officer",
    "a new head of investor relations",
    "a new board secretary",
    "a new general counsel",
]
CITIES = ["Denver", "Austin", "Charlotte", "Columbus", "Phoenix", "Raleigh"]


def build_sentiment(rng, per_label=80):
    rows = []
    seen = set()
    specs = [
        ("positive", POSITIVE_TEMPLATES),
        ("negative", NEGATIVE_TEMPLATES),
        ("neutral", NEUTRAL_TEMPLATES),
    ]
    for label, templates in specs:
        count = 0
        guard = 0
        while count < per_label:
            guard += 1
            if guard > 100000:
                raise RuntimeError("could not generate enough unique headlines")
            tpl = templates[count % len(templates)] if guard <= per_label else rng.choice(templates)
            text = tpl.format(
                co=rng.choice(HEADLINE_COMPANIES),
                n=rng.randint(4, 28),
                k=f"{rng.randrange(200, 5001, 50):,}",
                pverb=rng.choice(POSITIVE_VERBS),
                nverb=rng.choice(NEGATIVE_VERBS),
                qtr=rng.choice(QUARTERS),
                day=rng.choice(DAYS),
                role=rng.choice(ROLES),
                city=rng.choice(CITIES),
            )
            text = text[0].upper() + text[1:]
            key = norm(text)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"text": text, "label": label})
            count += 1
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------
# Chat conversations
# ---------------------------------------------------------------------------

SYSTEM_PROMPTS = [
    "You are a helpful assistant that explains finance concepts clearly and concisely. You do not give personalized investment advice.",
    "You are a concise finance tutor. Show the formula and the numbers when doing calculations.",
    "You answer questions about personal finance and accounting in plain language.",
]

# (question index, follow-up question index) pairs of related concepts, by question text prefix.
CONCEPT_FOLLOWUPS = [
    ("What is a call option?", "What is a put option?", "And what about a put option?"),
    ("What is simple interest?", "What is compound interest?", "How is compound interest different?"),
    ("What is a bull market?", "What is a bear market?", "And the opposite, a bear market?"),
    ("What is a yield curve?", "What does it mean when the yield curve inverts?", "What does it mean when it inverts?"),
    ("What is inflation?", "What is deflation?", "What about deflation?"),
    ("What does the current ratio measure?", "What is the quick ratio?", "How is the quick ratio different?"),
    ("What is a bond?", "What is yield to maturity?", "What is yield to maturity on a bond?"),
    ("What is EBITDA?", "What is free cash flow?", "How is that different from free cash flow?"),
    ("What is gross margin?", "What is net profit margin?", "And net profit margin?"),
    ("What is beta in finance?", "What is the Sharpe ratio?", "What does the Sharpe ratio measure, then?"),
    (
        "What is a mortgage?",
        "What is the difference between a fixed-rate and an adjustable-rate mortgage?",
        "What's the difference between fixed-rate and adjustable-rate ones?",
    ),
    ("What is present value?", "What is net present value (NPV)?", "How does that lead to net present value?"),
]

SINGLE_CONCEPT_REPHRASE = [
    "Can you explain {x}",
    "Quick question: {x}",
    "{x}",
    "In simple terms, {x}",
]


def lower_first(s):
    return s[0].lower() + s[1:]


def chat_followup_loan(rng):
    kind, P, r, years = _loan_params(rng)
    years2 = rng.choice([y for y in ([10, 15, 20, 25, 30] if kind == "mortgage" else [2, 3, 4, 5, 6, 7]) if y != years])
    n1, n2 = years * 12, years2 * 12
    m1, m2 = r2(loan_payment(P, r, n1)), r2(loan_payment(P, r, n2))
    u1 = f"What would the monthly payment be on a {money0(P)} {kind} at {rate_str(r)} for {plural(years, 'year')}?"
    a1 = (
        f"Using M = P·r(1 + r)^n / [(1 + r)^n − 1] with r = {dec(r)}/12 and n = {n1}, the payment is {money(m1)} per month, "
        f"about {money(m1 * n1 - P)} in total interest."
    )
    u2 = f"And if the term were {plural(years2, 'year')} instead?"
    a2 = (
        f"With n = {n2}, M = {money(m2)} per month and total interest is about {money(m2 * n2 - P)}. "
        f"{'A shorter term raises the payment but lowers total interest.' if years2 < years else 'A longer term lowers the payment but raises total interest.'}"
    )
    return [u1, a1, u2, a2]


def chat_followup_compound(rng):
    P = rng.randrange(1000, 20001, 500)
    r = pick_rate(rng, 2, 8)
    t = rng.randint(5, 25)
    fv1 = P * (1 + r) ** t
    fv12 = P * (1 + r / 12) ** (12 * t)
    u1 = f"How much will {money0(P)} be worth after {t} years at {rate_str(r)} compounded annually?"
    a1 = f"FV = P(1 + r)^t = {P:,} × (1 + {dec(r)})^{t} = {money(fv1)}."
    u2 = "What if it were compounded monthly instead?"
    a2 = (
        f"FV = {P:,} × (1 + {dec(r)}/12)^(12×{t}) = {money(fv12)}, which is {money(r2(fv12) - r2(fv1))} more "
        f"because interest is added to the balance more often."
    )
    return [u1, a1, u2, a2]


def chat_followup_real(rng):
    nom = pick_rate(rng, 2, 12)
    inf = pick_rate(rng, 1, 8)
    inf2 = round(inf + pick_rate(rng, 1, 4), 6)
    r1 = (1 + nom) / (1 + inf) - 1
    r2 = (1 + nom) / (1 + inf2) - 1
    u1 = f"My savings earned {rate_str(nom)} last year and inflation was {rate_str(inf)}. What was my real return?"
    a1 = f"Real return = (1 + {dec(nom)}) / (1 + {dec(inf)}) − 1 = {pct(r1)}."
    u2 = f"And if inflation had been {rate_str(inf2)}?"
    a2 = (
        f"Real return = (1 + {dec(nom)}) / (1 + {dec(inf2)}) − 1 = {pct(r2)}"
        f"{', a loss of purchasing power.' if r2 < 0 else '.'}"
    )
    return [u1, a1, u2, a2]


def chat_followup_cagr(rng):
    begin = rng.randrange(5000, 50001, 1000)
    years = rng.randint(3, 12)
    end = round(begin * (1 + rng.uniform(0.02, 0.14)) ** years / 100) * 100
    c = (end / begin) ** (1 / years) - 1
    years2 = years + rng.randint(3, 10)
    proj = end * (1 + c) ** (years2 - years)
    u1 = f"My portfolio went from {money0(begin)} to {money0(end)} in {years} years. What was the CAGR?"
    a1 = f"CAGR = ({end:,} / {begin:,})^(1/{years}) − 1 = {pct(c)} per year."
    u2 = f"If it kept growing at exactly that rate, what would it be worth after {years2 - years} more years?"
    a2 = (
        f"Value = {end:,} × (1 + CAGR)^{years2 - years} = {money(proj)}. This is only an illustration; "
        f"past growth rates do not predict future returns."
    )
    return [u1, a1, u2, a2]


CHAT_FOLLOWUP_GENERATORS = [chat_followup_loan, chat_followup_compound, chat_followup_real, chat_followup_cagr]


def build_chat(rng, concepts, n_rows=60):
    cdict = dict(concepts)
    rows = []
    # 1) two-turn concept follow-ups (12)
    for q1, q2, u2 in CONCEPT_FOLLOWUPS:
        msgs = [
            {"role": "user", "content": q1},
            {"role": "assistant", "content": cdict[q1]},
            {"role": "user", "content": u2},
            {"role": "assistant", "content": cdict[q2]},
        ]
        rows.append(msgs)
    # 2) two-turn calculation follow-ups (16)
    for i in range(16):
        rows.append(
            [
                {"role": r, "content": c}
                for r, c in zip(
                    ["user", "assistant", "user", "assistant"], CHAT_FOLLOWUP_GENERATORS[i % 4](rng), strict=False
                )
            ]
        )
    # 3) single-turn calculations (14)
    for _ in range(14):
        q, ctx, a = rng.choice(TEMPLATES)(rng)
        user = q if not ctx else f"{ctx}\n\n{q}"
        rows.append([{"role": "user", "content": user}, {"role": "assistant", "content": a}])
    # 4) single-turn concepts (the rest)
    used = {q for q, _, _ in CONCEPT_FOLLOWUPS} | {q for _, q, _ in CONCEPT_FOLLOWUPS}
    pool = [(q, a) for q, a in concepts if q not in used]
    rng.shuffle(pool)
    k = 0
    while len(rows) < n_rows:
        q, a = pool[k]
        tpl = rng.choice(SINGLE_CONCEPT_REPHRASE)
        if tpl.startswith("Can you explain") and not q.startswith("What is "):
            tpl = "In simple terms, {x}"
        x = q if tpl.startswith("{x}") else lower_first(q)
        if tpl.startswith("Can you explain"):
            x = lower_first(q).rstrip("?") + "?"
            x = x.replace("what is ", "", 1) if x.startswith("what is ") else x
        rows.append([{"role": "user", "content": tpl.format(x=x)}, {"role": "assistant", "content": a}])
        k += 1
    # Optional system prompt on about half the conversations.
    out = []
    for msgs in rows:
        if rng.random() < 0.5:
            msgs = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] + msgs
        out.append({"messages": msgs})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------


def norm(s):
    return " ".join(s.lower().split())


def build_qa(rng, n_calc=253, n_long_calc=12):
    rows = []
    seen = set()

    def add(instr, inp, out):
        key = norm(instr + " " + inp)
        if key in seen:
            return False
        seen.add(key)
        rows.append({"instruction": instr, "input": inp, "output": out})
        return True

    for q, a in CONCEPTS + LONG_CONCEPTS:
        if not add(q, "", a):
            raise RuntimeError(f"duplicate concept question: {q}")
    made = 0
    i = 0
    while made < n_long_calc:
        if add(*LONG_TEMPLATES[i % len(LONG_TEMPLATES)](rng)):
            made += 1
        i += 1
    made = 0
    i = 0
    while made < n_calc - n_long_calc:
        if add(*TEMPLATES[i % len(TEMPLATES)](rng)):
            made += 1
        i += 1
    rng.shuffle(rows)
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    args = ap.parse_args(argv)
    out_dir = os.path.normpath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)

    # Separate RNG streams per file so changing one file's generator does not reshuffle the others.
    qa = build_qa(random.Random(args.seed))
    sent = build_sentiment(random.Random(args.seed + 1))
    chat = build_chat(random.Random(args.seed + 2), CONCEPTS)

    for name, rows in [("finance_qa.jsonl", qa), ("finance_sentiment.jsonl", sent), ("finance_chat.jsonl", chat)]:
        write_jsonl(os.path.join(out_dir, name), rows)
        print(f"wrote {len(rows):4d} rows to {os.path.join(out_dir, name)}")


if __name__ == "__main__":
    main()
